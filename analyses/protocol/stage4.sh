#!/bin/bash
# Stage 4 (docs/testbed.md): the attnlens-shapes test captions from where stage 2 stopped (12), to 39 (78 units),
# so that both models have the size the power calculation asks for; resumable.
exec bash "$(dirname "$0")/extend.sh" shapes test4
