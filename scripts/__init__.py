"""Operations helpers run by start.sh, install.sh, supervisord and the Docker healthcheck."""
