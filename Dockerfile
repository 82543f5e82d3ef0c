# relay-server in a container, installed offline from wheels built beforehand:
#
#   pip wheel . -w dist                  # the relay's wheel and every dependency's, with the same Python
#                                        # minor version and CPU architecture as the image (3.11, as below)
#   docker build -t upload-relay .
#   docker run --rm -p 8000:8000 upload-relay --upstream http://upstream.example:8001
#
# The build reads nothing from the network: `pip install --no-index` takes only the wheels in dist/.
# Arguments after the image name are relay-server flags; RELAY_* environment variables work as well.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY dist/*.whl /tmp/wheels/
RUN python -m pip install --no-index --find-links /tmp/wheels upload-relay \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/relay --create-home --shell /usr/sbin/nologin relay

# Not root. The embedded sample upstream's store and the resumable uploads' spool live in the volume.
USER 10001:10001
WORKDIR /var/lib/relay
VOLUME ["/var/lib/relay"]
ENV RELAY_STORE=/var/lib/relay/received \
    RELAY_SPOOL=/var/lib/relay/spool

EXPOSE 8000
# SIGTERM (docker stop) starts the drain: give `docker stop -t` more than --drain-timeout (30 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay-server", "--host", "0.0.0.0"]
CMD []
