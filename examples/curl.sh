#!/usr/bin/env bash
# Generate images with nothing but curl: the plain JSON API, then the OpenAI endpoint.
#
#     bash examples/curl.sh
#
# Environment: ROUTER_URL (default http://127.0.0.1:8080); OPENAI_API_KEY, a tenant's key
# in keys mode (sent as Authorization: Bearer); EXAMPLES_OUT, where the images go
# (default: the current directory).
set -euo pipefail

ROUTER_URL="${ROUTER_URL:-http://127.0.0.1:8080}"
OUT="${EXAMPLES_OUT:-.}"
auth=()
if [ -n "${OPENAI_API_KEY:-}" ]; then
  auth=(-H "Authorization: Bearer ${OPENAI_API_KEY}")
fi

# 1. POST /api/v1/generate answers with the image itself (Content-Type: image/png).
#    -D - prints the answer's headers: X-Router-Route, X-Router-Model, ... say what served it.
#    On an error the body (a JSON error) is shown and the script stops.
curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} -D - \
  -H 'content-type: application/json' \
  -d '{"prompt": "a sketch of a lighthouse", "seed": 7, "width": 64, "height": 64}' \
  -o "$OUT/curl_generate.png" \
  "$ROUTER_URL/api/v1/generate" || { cat "$OUT/curl_generate.png" >&2; exit 1; }
echo "wrote $OUT/curl_generate.png"

# 2. The OpenAI Images API: JSON with the image base64-encoded in data[0].b64_json.
curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} \
  -H 'content-type: application/json' \
  -d '{"prompt": "a sketch of a sailing boat", "response_format": "b64_json", "seed": 7}' \
  -o "$OUT/curl_openai.json" \
  "$ROUTER_URL/v1/images/generations" || { cat "$OUT/curl_openai.json" >&2; exit 1; }
# with jq: jq -r '.data[0].b64_json' "$OUT/curl_openai.json" | base64 -d > "$OUT/curl_openai.png"
sed -nE 's/.*"b64_json" *: *"([^"]*)".*/\1/p' "$OUT/curl_openai.json" | base64 -d > "$OUT/curl_openai.png"
[ -s "$OUT/curl_openai.png" ] || { echo "no b64_json image in $OUT/curl_openai.json" >&2; exit 1; }
echo "wrote $OUT/curl_openai.png"
