#!/usr/bin/env bash
# Point this clone at the team's shared DVC remote: an S3 bucket, or any S3-compatible store (MinIO, Ceph,
# R2, ...) given its endpoint. Needs `pip install 'finsent[s3]'` (dvc-s3).
#
#   scripts/dvc_remote.sh s3://BUCKET/finsent                      # AWS S3
#   scripts/dvc_remote.sh s3://BUCKET/finsent https://HOST:9000    # an S3-compatible endpoint
#
# The bucket URL goes in .dvc/config (commit it: teammates then only `dvc pull`); the endpoint goes in
# .dvc/config.local (never committed; add it to .dvc/config with `dvc remote modify shared endpointurl URL`
# when the whole team uses the same one). Credentials are never written by this script or by finsent:
# DVC reads them from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an
# instance role), like every AWS client.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 s3://BUCKET/PREFIX [ENDPOINT_URL]" >&2
  exit 2
fi
url=$1
endpoint=${2:-}
python -c "import dvc_s3" 2>/dev/null || { echo "$0: dvc-s3 is not installed; pip install 'finsent[s3]'" >&2; exit 1; }
case "$url" in s3://*) ;; *) echo "$0: $url is not an s3:// URL" >&2; exit 2 ;; esac
dvc remote add --force --default shared "$url"
if [ -n "$endpoint" ]; then
  dvc remote modify --local shared endpointurl "$endpoint"
fi
echo "dvc remote 'shared' -> $url${endpoint:+ (endpoint $endpoint, in .dvc/config.local)}; credentials come from the environment"
