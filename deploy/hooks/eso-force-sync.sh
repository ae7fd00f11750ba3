#!/bin/sh
# rotator exec hook: make External Secrets Operator refresh an ExternalSecret now, instead of at
# its next refreshInterval, by setting its force-sync annotation (the documented ESO trigger).
#
#   EXTERNAL_SECRET  name of the ExternalSecret (required)
#   NAMESPACE        its namespace (default: default)
#   KUBECTL          kubectl binary (default: kubectl)
#   WAIT_READY       1: also wait until ESO has synced the new version and reports Ready, so the
#                    hook can be a gate (default: 0: annotate and return)
#   WAIT_TIMEOUT     seconds to wait for that (default: 60; keep the hook's timeout above it)
#   POLL_INTERVAL    seconds between looks at the ExternalSecret's status (default: 2)
#
# Idempotent: a repeated delivery just asks for one more refresh. Never sees the key's value.
# See deploy/hooks/README.md and docs/hooks.md.
set -eu

KUBECTL=${KUBECTL:-kubectl}
NAMESPACE=${NAMESPACE:-default}
WAIT_READY=${WAIT_READY:-0}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
POLL_INTERVAL=${POLL_INTERVAL:-2}

log() {
    printf 'eso-force-sync: secret=%s last4=%s event=%s delivery=%s: %s\n' \
        "${ROTATOR_SECRET:-?}" "${ROTATOR_KEY_LAST4:-?}" "${ROTATOR_EVENT:-?}" \
        "${ROTATOR_DELIVERY_ID:-?}" "$*" >&2
}

if [ -z "${EXTERNAL_SECRET:-}" ]; then
    echo "eso-force-sync: EXTERNAL_SECRET is not set: name the ExternalSecret to refresh" \
        "(in the hook's config: env = { EXTERNAL_SECRET = \"my-app-api-key\" })" >&2
    exit 2
fi
case $WAIT_TIMEOUT$POLL_INTERVAL in
    *[!0-9]*) echo "eso-force-sync: WAIT_TIMEOUT and POLL_INTERVAL are whole seconds" >&2; exit 2 ;;
esac
if [ "$POLL_INTERVAL" -lt 1 ]; then
    echo "eso-force-sync: POLL_INTERVAL must be at least 1 second" >&2
    exit 2
fi

target="externalsecret/$EXTERNAL_SECRET"
synced_version() {
    # ESO sets status.syncedResourceVersion after each SUCCESSFUL sync of the ExternalSecret's
    # current metadata: it changes once the sync our annotation asked for has happened.
    "$KUBECTL" get externalsecret "$EXTERNAL_SECRET" -n "$NAMESPACE" \
        -o 'jsonpath={.status.syncedResourceVersion}'
}

if [ "$WAIT_READY" = 1 ]; then
    before=$(synced_version)
fi

stamp=$(date +%s)
log "annotating $target in namespace $NAMESPACE with force-sync=$stamp"
"$KUBECTL" annotate externalsecret "$EXTERNAL_SECRET" -n "$NAMESPACE" \
    force-sync="$stamp" --overwrite >&2

[ "$WAIT_READY" = 1 ] || exit 0

# Ready alone is not enough: it is still True from the previous sync right after the annotation.
log "waiting up to ${WAIT_TIMEOUT}s for ESO to sync $target"
waited=0
while [ "$(synced_version)" = "$before" ]; do
    if [ "$waited" -ge "$WAIT_TIMEOUT" ]; then
        log "ESO did not sync $target within ${WAIT_TIMEOUT}s (see: $KUBECTL describe $target -n $NAMESPACE)"
        exit 1
    fi
    sleep "$POLL_INTERVAL"
    waited=$((waited + POLL_INTERVAL))
done
log "waiting for $target to report Ready"
"$KUBECTL" wait --for=condition=Ready "$target" -n "$NAMESPACE" --timeout="${WAIT_TIMEOUT}s" >&2
log "$target synced and Ready"
