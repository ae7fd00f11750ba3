#!/bin/sh
# rotator exec hook: restart Kubernetes Deployments so their pods read the new key, and wait
# until every rollout has finished; a rollout that fails or times out fails the hook (and, as a
# gate, holds the old key's revoke).
#
#   DEPLOYMENT       name(s) of the Deployment(s), space-separated (required)
#   NAMESPACE        their namespace (default: default)
#   KUBECTL          kubectl binary (default: kubectl)
#   ROLLOUT_TIMEOUT  how long `kubectl rollout status` waits for each (default: 5m; keep the
#                    hook's timeout above the total)
#
# A repeated delivery restarts the pods once more: harmless, they read the same key.
# Never sees the key's value. See deploy/hooks/README.md and docs/hooks.md.
set -eu
set -f   # the deployment list is split on spaces, never globbed

KUBECTL=${KUBECTL:-kubectl}
NAMESPACE=${NAMESPACE:-default}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-5m}
DEPLOYMENT=${DEPLOYMENT:-}

log() {
    printf 'rollout-restart: secret=%s last4=%s event=%s delivery=%s: %s\n' \
        "${ROTATOR_SECRET:-?}" "${ROTATOR_KEY_LAST4:-?}" "${ROTATOR_EVENT:-?}" \
        "${ROTATOR_DELIVERY_ID:-?}" "$*" >&2
}

if [ -z "$(printf '%s' "$DEPLOYMENT" | tr -d ' ')" ]; then
    echo "rollout-restart: DEPLOYMENT is not set: name the Deployment(s) to restart, space-separated" \
        "(in the hook's config: env = { DEPLOYMENT = \"web worker\" })" >&2
    exit 2
fi

# Restart them all first, so their rollouts run side by side, then wait for each.
for name in $DEPLOYMENT; do
    log "restarting deployment/$name in namespace $NAMESPACE"
    "$KUBECTL" rollout restart "deployment/$name" -n "$NAMESPACE" >&2
done
for name in $DEPLOYMENT; do
    log "waiting up to $ROLLOUT_TIMEOUT for deployment/$name to roll out"
    if ! "$KUBECTL" rollout status "deployment/$name" -n "$NAMESPACE" --timeout="$ROLLOUT_TIMEOUT" >&2; then
        log "deployment/$name did not roll out (see: $KUBECTL rollout status deployment/$name -n $NAMESPACE)"
        exit 1
    fi
done
log "rolled out: $DEPLOYMENT"
