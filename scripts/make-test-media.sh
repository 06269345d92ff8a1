#!/usr/bin/env bash
# Regenerates the small videos in tests/media/ (committed) that the probe's native tests and
# the end-to-end tests measure. Needs ffmpeg. Each is a few KB: 64x36, 10 fps, no sound.
set -euo pipefail
cd "$(dirname "$0")/../tests/media"
make() { # make SECONDS OUTPUT [extra ffmpeg options...]
  local seconds=$1 output=$2
  shift 2
  ffmpeg -v error -y -f lavfi -i "testsrc2=s=64x36:r=10:d=$seconds" -c:v libx264 -preset ultrafast -crf 45 -pix_fmt yuv420p "$@" "$output"
}
make 2 two-seconds.mp4 -movflags +faststart
make 10 ten-seconds-tail-indexed.mp4
make 12 twelve-seconds-fast-start.mp4 -movflags +faststart
make 25 twenty-five-seconds.mp4 -movflags +faststart
make 8 eight-seconds.mov -f mov
make 5 five-seconds-fragmented.mp4 -movflags frag_keyframe+empty_moov
# Uploads (tests/e2e/assets.test.mjs).
make 1 one-second.mp4 -movflags +faststart
make 6 six-seconds.mp4 -movflags +faststart
make 9 nine-seconds.mov -f mov
make 30 thirty-seconds.mp4 -movflags +faststart
ls -l
