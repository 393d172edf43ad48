# Sourced by make-base.sh and test.sh: `need COMMAND:PACKAGE...` installs
# from Debian each package whose command is missing (so a docker-ce or a
# compose v2 already there is kept as it is).
need() {
    local p missing=
    for p in "$@"; do
        command -v "${p%%:*}" >/dev/null 2>&1 || missing="$missing ${p#*:}"
    done
    [ -n "$missing" ] || return 0
    echo "installing from Debian:$missing"
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}
