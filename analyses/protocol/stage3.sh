#!/bin/bash
# Stage 3 (docs/testbed.md): the bag-of-words test captions from where stage 2 stopped, to 39 (78 units); resumable.
exec bash "$(dirname "$0")/extend.sh" bow test3
