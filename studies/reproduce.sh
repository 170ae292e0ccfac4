#!/usr/bin/env bash
# Runs the five findings of REPRODUCTION.md one after another (resumable: rerun to continue), then copies
# each report, its figures and its tables into docs/reproduction/<name>/. Usage:
#   bash studies/reproduce.sh            # all: transition, duration, width, resolution(-shapes), conditioning
#   bash studies/reproduce.sh width      # one of them
# OUT (default out/reproduction), DOCS (default docs/reproduction) and DIFFMEM (default diffmem) override.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/reproduction}
DOCS=${DOCS:-docs/reproduction}
DIFFMEM=${DIFFMEM:-diffmem}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(transition duration width resolution resolution-shapes conditioning)
for name in "${names[@]}"; do
  if [ "$name" != transition ] && { [[ ! "$name" =~ ^[a-z0-9_-]+$ ]] || [ ! -f "studies/$name.json" ]; }; then
    echo "reproduce.sh: $name is not a study; expected transition or one of: $(cd studies && ls *.json | sed 's/\.json$//' | tr '\n' ' ')" >&2
    exit 2
  fi
done
mkdir -p "$OUT" "$DOCS"
tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT
for name in "${names[@]}"; do
  start=$(date +%s)
  if [ "$name" = transition ]; then  # finding 1 is the embedded default: the EMM search of the digits preset
    "$DIFFMEM" emm --preset digits --out "$OUT/$name"
  else
    "$DIFFMEM" study --config "studies/$name.json" --out "$OUT/$name"
  fi
  echo "$name: $(( $(date +%s) - start )) s wall (this invocation)"
  tmp=$(mktemp -d "$DOCS/.$name.XXXXXX")
  cp "$OUT/$name"/*.json "$OUT/$name/results.csv" "$OUT/$name/report.md" "$tmp/"
  cp -r "$OUT/$name/figures" "$tmp/"
  chmod 755 "$tmp"
  rm -rf "${DOCS:?}/$name" && mv "$tmp" "$DOCS/$name"
  tmp=""
done
