ARG BASE
FROM ${BASE}
# etcd reads ETCD_* variables; these defaults suit one node in a container.
ENV ETCD_NAME=etcd0 \
    ETCD_DATA_DIR=/var/lib/etcd-data \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379 \
    ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380 \
    ETCD_UNSUPPORTED_ARCH=amd64
VOLUME /var/lib/etcd-data
EXPOSE 2379
ENTRYPOINT ["/usr/bin/etcd"]
