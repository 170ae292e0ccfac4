#!/usr/bin/env bash
# Runs the five findings of REPRODUCTION.md one after another (resumable: rerun to continue), then copies
# each report, its figures and its tables into docs/reproduction/<name>/. Usage, from the repository root:
#   bash studies/reproduce.sh            # all: transition, duration, width, resolution, conditioning
#   bash studies/reproduce.sh width      # one of them
set -euo pipefail
OUT=${OUT:-out/reproduction}
DOCS=${DOCS:-docs/reproduction}
DIFFMEM=${DIFFMEM:-diffmem}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(transition duration width resolution conditioning)
mkdir -p "$OUT"
for name in "${names[@]}"; do
  start=$(date +%s)
  if [ "$name" = transition ]; then  # finding 1 is the embedded default: the EMM search of the digits preset
    "$DIFFMEM" emm --preset digits --out "$OUT/$name"
  elif [ -f "studies/$name.json" ]; then
    "$DIFFMEM" study --config "studies/$name.json" --out "$OUT/$name"
  else
    echo "reproduce.sh: $name is not a study; expected transition or one of studies/*.json" >&2; exit 2
  fi
  echo "$name: $(( $(date +%s) - start )) s wall (this invocation)"
  rm -rf "$DOCS/$name.tmp" && mkdir -p "$DOCS/$name.tmp"
  cp "$OUT/$name"/*.json "$OUT/$name/results.csv" "$OUT/$name/report.md" "$DOCS/$name.tmp/"
  cp -r "$OUT/$name/figures" "$DOCS/$name.tmp/"
  rm -rf "$DOCS/$name" && mv "$DOCS/$name.tmp" "$DOCS/$name"
done
