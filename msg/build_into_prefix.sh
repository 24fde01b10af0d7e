#!/usr/bin/env bash
# Build the fhgs_ros interface package (this folder) into a prefix, normally the project's venv,
# with plain cmake (no colcon, nothing to source). Used by `make setup`; see README.md.
#   msg/build_into_prefix.sh <prefix> [<python>]
# Also builds the minimal tf2_msgs stand-in (vendor/tf2_msgs) when that Python has no tf2_msgs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="$(cd "$1" && pwd)"
PY="${2:-$PREFIX/bin/python}"
BUILD="${FHGS_MSG_BUILD_DIR:-$HERE/../build}"
JOBS="${JOBS:-2}"
build_pkg() {  # <source dir> <name>
  AMENT_PREFIX_PATH="$PREFIX${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" \
  CMAKE_PREFIX_PATH="$PREFIX${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}" \
    cmake -S "$1" -B "$BUILD/$2" -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$PREFIX" \
      -DPython3_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release > "$BUILD/$2.cmake.log" 2>&1 \
    || { cat "$BUILD/$2.cmake.log"; exit 1; }
  cmake --build "$BUILD/$2" --target install -j "$JOBS" > "$BUILD/$2.build.log" 2>&1 \
    || { tail -n 60 "$BUILD/$2.build.log"; exit 1; }
  echo "built $2 into $PREFIX"
}
mkdir -p "$BUILD"
if ! (cd / && "$PY" -c "import tf2_msgs.msg" >/dev/null 2>&1); then
  build_pkg "$HERE/vendor/tf2_msgs" tf2_msgs
fi
build_pkg "$HERE" fhgs_interfaces
(cd / && "$PY" -c "from fhgs_interfaces.srv import SaveMap; from tf2_msgs.msg import TFMessage") \
  || { echo "interfaces built but do not import with $PY"; exit 1; }
