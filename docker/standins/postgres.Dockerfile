# A stand-in for the official postgres image, for machines that reach no image registry (scripts/compose_e2e.sh
# builds it FROM a debootstrap'd Debian bookworm, tagged phasetune-standin/debian:bookworm): Debian's PostgreSQL 15
# behind the official image's contract: POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB on first start, data in
# /var/lib/postgresql/data (a volume), pg_isready on PATH, fast shutdown on stop.
FROM phasetune-standin/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
# A named volume starts as a copy of this directory, owner included: the server never needs root.
USER postgres
# SIGTERM would be PostgreSQL's "smart" shutdown, which waits for every client (the API's pool) to leave.
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres", "-c", "listen_addresses=*"]
