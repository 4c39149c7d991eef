#!/usr/bin/env bash
# Herald on a kind cluster, for people who have Docker (CI does not run this script).
# Creates the cluster, builds and loads the image, installs the chart with the dev values,
# runs an in-cluster SMTP capture (Mailpit), applies the sample campaign with its windows
# removed (so it may send now), starts a run and shows what was delivered.
# Needs: docker, kind 0.23 or newer (Kubernetes 1.30 or newer, for the chart's
# ValidatingAdmissionPolicy), kubectl, helm. Run from the repository root.
set -euo pipefail
cluster=${HERALD_KIND_CLUSTER:-herald}

kind create cluster --name "$cluster"
docker build -t herald:dev .
kind load docker-image herald:dev --name "$cluster"

helm install herald charts/herald -n herald-system --create-namespace \
  -f charts/herald/values-dev.yaml --wait

# The capture server the dev values name: mailpit.herald-demo.svc:1025 (web UI on 8025).
kubectl apply --server-side -f manifests/samples/namespace.yaml
kubectl -n herald-demo create deployment mailpit --image=axllent/mailpit:v1.21 --port=1025
kubectl -n herald-demo expose deployment mailpit --port=1025 --name=mailpit
kubectl -n herald-demo expose deployment mailpit --port=8025 --name=mailpit-ui
kubectl -n herald-demo rollout status deployment/mailpit

# The sample, relying on the chart's default relay, with no windows: it may send now.
kubectl apply --server-side -f manifests/samples/recipients.yaml
sed -e '/^  smtp:/,/^    connections:/d' manifests/samples/usage-notice-2026.yaml \
  | kubectl apply --server-side -f -
kubectl -n herald-demo patch nc usage-notice-2026 --type json \
  -p '[{"op":"remove","path":"/spec/windows"}]'
until kubectl -n herald-demo get cronjob usage-notice-2026-w0 >/dev/null 2>&1; do sleep 1; done
kubectl -n herald-demo create job --from=cronjob/usage-notice-2026-w0 usage-notice-now
kubectl -n herald-demo wait --for=condition=complete job/usage-notice-now --timeout=600s
kubectl -n herald-demo get nc
echo "Messages Mailpit received:"
kubectl -n herald-demo run mail-count --rm -i --restart=Never --image=curlimages/curl:8.10.1 \
  -- -s 'http://mailpit-ui:8025/api/v1/messages?limit=1'
echo

echo "See the messages: kubectl -n herald-demo port-forward svc/mailpit-ui 8025 (http://localhost:8025)"
echo "Remove it all:    kind delete cluster --name $cluster"
