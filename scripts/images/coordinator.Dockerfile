ARG BASE
FROM ${BASE}
COPY coordinator /usr/local/bin/coordinator
RUN useradd --system --no-create-home switchboard
USER switchboard
ENTRYPOINT ["/usr/local/bin/coordinator"]
