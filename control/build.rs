//! Compiles `proto/butterfly.proto` without a system `protoc`: `protox` parses it into a
//! `FileDescriptorSet`, `tonic-prost-build` generates the messages, client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/butterfly.proto");
    let fds = protox::compile(["butterfly.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
