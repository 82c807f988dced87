#!/usr/bin/env bash
# The main job: answer a task about an image.
#   scripts/run.sh [--model-dir DIR] [any `minigpt-med generate` option...]
# With --model-dir (a directory holding llama-2-7b-chat-hf/, eva_vit_g.pth, minigpt_med.pth) or
# --llama/--vit/--checkpoint, it runs the real model; with no weights given it runs the whole
# pipeline offline on the bundled tiny model (random weights) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  case "$arg" in
    --model-dir|--model-dir=*|--llama|--llama=*) exec cargo run --quiet --locked -p minigpt-med-cli -- generate "$@" ;;
  esac
done
exec cargo run --quiet --locked -p minigpt-med-cli -- demo "$@"
