ARG BASE
FROM ${BASE}
# nisshi (the Kafka-protocol broker, renamed from tansu) with SQLite storage:
# records are keyed by (partition, offset), so a fetch is a range scan and
# the log survives a restart. The database lives in /var/lib/nisshi (a
# named volume in docker-compose.yml).
COPY nisshi /usr/local/bin/nisshi
RUN mkdir -p /var/lib/nisshi
WORKDIR /var/lib
ENV LISTENER_URL=tcp://0.0.0.0:9092 \
    ADVERTISED_LISTENER_URL=tcp://127.0.0.1:9092 \
    STORAGE_ENGINE=sqlite://nisshi/broker.db
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/nisshi"]
CMD ["broker"]
