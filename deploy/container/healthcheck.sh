#!/bin/bash
# The image's HEALTHCHECK: GET /healthz on the container's own listener,
# with bash's /dev/tcp (the image has no curl). Exit 0 on a 200 only.
port="${IDEAMILL_PROBE_PORT:-9464}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 5 _ status _ <&3 || exit 1
[ "$status" = 200 ]
