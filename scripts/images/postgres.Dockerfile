ARG BASE
FROM ${BASE}
COPY entrypoint.sh /usr/local/bin/pg-entrypoint
ENV PGDATA=/var/lib/postgresql/data POSTGRES_USER=switchboard POSTGRES_PASSWORD=switchboard POSTGRES_PORT=5432
RUN mkdir -p "$PGDATA" /var/run/postgresql && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/pg-entrypoint"]
