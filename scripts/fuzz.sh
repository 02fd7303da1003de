#!/usr/bin/env bash
# Runs the MQTT decoder fuzz target (fuzz/) for a bounded time: FUZZ_SECS, 60 by default.
# Installs cargo-fuzz from crates.io if missing. libFuzzer needs nightly compiler flags;
# the stable toolchain is used with RUSTC_BOOTSTRAP=1 (the only toolchain on our machines).
# Then the rule SQL target (fuzz/fuzz_targets/rule_sql.rs) for half as long. A crash
# leaves its input under fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
cd fuzz
mkdir -p corpus/decode
# Seed the corpus with a few well-formed packets (selector byte, then the packet).
printf '\x01\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc' > corpus/decode/connect-v5
printf '\x00\x30\x07\x00\x03a/bhi' > corpus/decode/publish-v311
printf '\x01\x82\x09\x00\x01\x00\x00\x03a/#\x01' > corpus/decode/subscribe-v5
RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time="$secs" -rss_limit_mb=2048
# Rule SQL (half the time): seeded with the golden corpus's statements, keywords and
# operators as a dictionary.
mkdir -p corpus/rule_sql
python3 - <<'PY'
import json
for i, case in enumerate(json.load(open("../tests/data/rules_corpus.json"))):
    open(f"corpus/rule_sql/golden-{i}", "w").write(case["sql"])
PY
RUSTC_BOOTSTRAP=1 cargo fuzz run rule_sql -- -max_total_time="$((secs / 2))" -rss_limit_mb=2048 \
  -dict=rule_sql.dict
