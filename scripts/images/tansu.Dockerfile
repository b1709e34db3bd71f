ARG BASE
FROM ${BASE}
COPY tansu /usr/local/bin/tansu
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/tansu"]
CMD ["broker", "--listener-url", "tcp://0.0.0.0:9092", "--advertised-listener-url", "tcp://127.0.0.1:9092", "--storage-engine", "memory://tansu/"]
