#!/usr/bin/env bash
# The entry point of docker/postgres/Dockerfile: initialise an empty PGDATA like the official image does, then
# run the server on every interface with password authentication.
set -euo pipefail

user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-${user}}"

if [[ ! -s "${PGDATA}/PG_VERSION" ]]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  password_file="$(mktemp)"
  printf '%s' "${POSTGRES_PASSWORD}" > "${password_file}"
  initdb --username="${user}" --pwfile="${password_file}" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 > /dev/null
  rm -f "${password_file}"
  echo "host all all all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
  # Set-up on the socket only, so that nothing connects before it is done.
  pg_ctl --wait --silent -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start
  if [[ "${database}" != postgres ]]; then
    psql -v ON_ERROR_STOP=1 -U "${user}" -d postgres -qc "CREATE DATABASE \"${database}\""
  fi
  for script in /docker-entrypoint-initdb.d/*.sql; do
    if [[ -e "${script}" ]]; then psql -v ON_ERROR_STOP=1 -U "${user}" -d "${database}" -qf "${script}"; fi
  done
  pg_ctl --wait --silent -m fast stop
fi
exec postgres -c listen_addresses='*' -c unix_socket_directories=/tmp
