#!/usr/bin/env bash
# Installs the system packages noduleflow's tests and demo use, and starts the local
# RabbitMQ and PostgreSQL when they are installed but stopped. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v Orthanc >/dev/null || need+=(orthanc)
# Orthanc's DICOMweb plugin: the STOW-RS push test (tests/integration/receiver/test_stow_orthanc.py)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ "${NODULEFLOW_SKIP_BROWSER:-0}" = 1 ] || command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs npm)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v promtool >/dev/null || need+=(prometheus)  # promtool: alert rule tests
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Debian's orthanc package may start a system instance; ours start on their own ports.
if command -v rabbitmqctl >/dev/null && ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "starting RabbitMQ"
  $SUDO rabbitmq-server -detached
  for _ in $(seq 60); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
fi
# RabbitMQ 3.10's quorum-queue dead-letter worker can crash after heavy queue churn (the
# tests create and delete hundreds of quorum queues), leaving new quorum queues unusable
# until the app restarts. CI starts every run from a freshly started broker app.
if [ "${CI:-}" = "true" ] && command -v rabbitmqctl >/dev/null && rabbitmqctl -q status >/dev/null 2>&1; then
  echo "restarting the RabbitMQ app for a fresh quorum-queue state"
  rabbitmqctl -q stop_app && rabbitmqctl -q start_app
  rabbitmqctl -q await_startup --timeout 60 || true
fi
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
exit 0
