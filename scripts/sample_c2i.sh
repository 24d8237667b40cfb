#!/usr/bin/env bash
# Alias of sample_c2i_visualization.sh.
exec bash "$(dirname "${BASH_SOURCE[0]}")/sample_c2i_visualization.sh" "$@"
