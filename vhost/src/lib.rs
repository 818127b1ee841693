//! vhost-user virtio-net backend (issue 6).
