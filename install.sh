#!/usr/bin/env bash
# Install store-gateway on Debian 12 / Raspberry Pi OS Bookworm.
# Idempotent (safe to run again; that is also how to upgrade) and never prompts.
# Run ./install.sh --help for what it does.
set -euo pipefail
# Let the ERR trap below see failures inside functions too.
set -o errtrace

usage() {
    cat <<'EOF'
Usage: ./install.sh [--dev] [--no-apt] [--help]

Installs store-gateway from this checkout. Needs root; re-runs itself through
sudo when started as another user. Safe to run again: that is also how you
upgrade after pulling new code. Never asks questions.

Default (production, e.g. on the store's Raspberry Pi):
  - apt packages: mosquitto, mosquitto-clients, bluez, python3, python3-venv, jq
  - venv /opt/store-gateway (built with /usr/bin/python3) with this checkout
    installed (upgraded on every run); /usr/local/bin/store-gateway links to it
  - system user storegw (no login shell, home /var/lib/store-gateway) in the
    groups bluetooth (BlueZ over D-Bus) and dialout (POS serial lanes)
  - /etc/store-gateway (0750 root:storegw) with gateway.toml copied from
    gateway/gateway.example.toml only when absent: an existing one is never touched,
    and the shipped POS dialects in /etc/store-gateway/pos/ (each only when absent)
  - /var/lib/store-gateway (0750 storegw): database, outbox, models
  - /usr/share/store-gateway (0755, refreshed on every run): the default model bundle
    (models/default) and the shipped POS dialects with their sample captures (pos/)
  - Mosquitto for the store: /etc/mosquitto/conf.d/store-gateway.conf
    (listener on 127.0.0.1:1883, persistence on)
  - usbserial and cdc_acm loaded at boot (/etc/modules-load.d/store-gateway.conf)
  - systemd units from systemd/ into /etc/systemd/system; enabled and
    (re)started when systemd is running, otherwise it prints how to run the
    gateway in the foreground

--dev     for developers and CI: the apt packages above plus socat, git,
          shellcheck and systemd (systemd-analyze), and a .venv in this
          checkout with `pip install -e '.[dev]'` (made with /usr/bin/python3,
          as on the Pi). No service user, no /etc changes, no systemd units.
          Then run the tests with: .venv/bin/pytest
--no-apt  skip apt-get update/install (the packages must already be there)
-h, --help  print this help and exit

Exit status: 0 done, 1 a step failed (the log says which), 2 bad usage.
EOF
}

log() { printf '[install] %s\n' "$*"; }
warn() { printf '[install] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[install] ERROR: %s\n' "$*" >&2
    exit 1
}
on_error() {
    printf '[install] FAILED (line %s): %s\n' "$1" "$2" >&2
    exit 1
}
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR

MODE=production
USE_APT=1
ORIG_ARGS=("$@")
while (($# > 0)); do
    case $1 in
        --dev) MODE=dev ;;
        --no-apt) USE_APT=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            printf '[install] unknown option: %s\n\n' "$1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
        log "not root: re-running through sudo"
        if [[ -t 0 ]]; then
            exec sudo -- bash "$SRC_DIR/install.sh" "${ORIG_ARGS[@]}"
        fi
        # No terminal to type a password on (CI, pipes): fail instead of hanging.
        exec sudo -n -- bash "$SRC_DIR/install.sh" "${ORIG_ARGS[@]}"
    fi
    die "must run as root and sudo is not installed: run it as root, e.g. su -c '$SRC_DIR/install.sh ${ORIG_ARGS[*]}'"
fi

# Files we create (venv, config, units) must be readable by storegw and
# mosquitto whatever root's own umask is.
umask 022
export DEBIAN_FRONTEND=noninteractive
# pip must never stop to ask (credentials, confirmations); its index comes from
# the system's pip configuration (/etc/pip.conf), never from here.
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The Pi's interpreter (Raspberry Pi OS Bookworm: Python 3.11), not whatever
# python3 comes first on PATH (pyenv, conda).
PYTHON=/usr/bin/python3
PROD_VENV=/opt/store-gateway
SERVICE_USER=storegw
CONFIG_DIR=/etc/store-gateway
SHARE_DIR=/usr/share/store-gateway
STATE_DIR=/var/lib/store-gateway
MOSQUITTO_CONF=/etc/mosquitto/conf.d/store-gateway.conf
UNIT_DIR=/etc/systemd/system

BASE_PACKAGES=(
    ca-certificates   # pip fetches over HTTPS
    python3
    python3-venv
    mosquitto
    mosquitto-clients # mosquitto_sub: reading the gateway's status and health
    bluez
    jq                # the runbook reads the JSON journal with jq
)
DEV_PACKAGES=(
    socat             # pty pairs standing in for POS lanes in tests
    dbus-daemon       # a private bus with a fake org.bluez for the adapter-reset tests
    git
    shellcheck        # tests lint install.sh and .ci/run
    systemd           # systemd-analyze: tests verify the unit
)

systemd_running() { [[ -d /run/systemd/system ]]; }

install_apt_packages() {
    local packages=("${BASE_PACKAGES[@]}")
    if [[ $MODE == dev ]]; then
        packages+=("${DEV_PACKAGES[@]}")
    fi
    if ((USE_APT == 0)); then
        log "apt: skipped (--no-apt)"
        local missing=() cmd
        for cmd in "$PYTHON" mosquitto mosquitto_sub; do
            command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
        done
        ((${#missing[@]} == 0)) || warn "--no-apt, and not installed: ${missing[*]}"
        return 0
    fi
    log "apt: apt-get update"
    apt-get update -q
    log "apt: installing ${packages[*]}"
    apt-get install -y -q --no-install-recommends "${packages[@]}"
}

# Create the venv at $1 with $PYTHON, or recreate it when it was made by
# another interpreter (or is broken); otherwise keep it, so reruns are quick.
ensure_venv() {
    local venv=$1 want have=""
    want=$("$PYTHON" -c 'import sys; print(sys.prefix, *sys.version_info[:2])')
    if [[ -x $venv/bin/python ]]; then
        have=$("$venv/bin/python" -c 'import sys; print(sys.base_prefix, *sys.version_info[:2])' \
            2>/dev/null) || have="broken"
    fi
    if [[ -n $have && $have == "$want" ]] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        log "venv: reusing $venv ($have)"
        return 0
    fi
    if [[ -e $venv ]]; then
        log "venv: $venv is not a working venv of $PYTHON (found: ${have:-no python}); recreating"
        rm -rf -- "$venv"
    else
        log "venv: creating $venv with $PYTHON"
    fi
    "$PYTHON" -m venv "$venv"
}

install_dev() {
    local venv=$SRC_DIR/.venv
    ensure_venv "$venv"
    log "pip: installing this checkout editable with [dev] extras into $venv"
    "$venv/bin/python" -m pip install -q -e "${SRC_DIR}[dev]"
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        log "owner: giving .venv and build metadata back to $SUDO_USER"
        chown -R -- "$SUDO_USER:" "$venv"
        local path
        for path in "$SRC_DIR"/*.egg-info "$SRC_DIR/build"; do
            if [[ -e $path ]]; then
                chown -R -- "$SUDO_USER:" "$path"
            fi
        done
    fi
    log "done: run the tests with  .venv/bin/pytest"
}

install_prod_venv() {
    ensure_venv "$PROD_VENV"
    # Build from a clean copy of the checkout: no root-owned build/ or
    # *.egg-info left in a developer's tree, and no stale build/lib files
    # (modules deleted since) slipping into the wheel.
    local build_dir
    build_dir=$(mktemp -d /tmp/store-gateway-build.XXXXXX)
    tar -C "$SRC_DIR" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.pytest_cache \
        --exclude=./.ruff_cache --exclude=./.hypothesis -cf - . | tar -C "$build_dir" -xf -
    log "pip: installing this checkout into $PROD_VENV (upgrade)"
    # pip reinstalls a local directory even when its version number has not
    # changed, so new code always lands; dependencies move only when their
    # ranges in pyproject.toml ask for it.
    "$PROD_VENV/bin/python" -m pip install -q --upgrade "$build_dir"
    rm -rf -- "$build_dir"
    ln -sfn "$PROD_VENV/bin/store-gateway" /usr/local/bin/store-gateway
    log "path: /usr/local/bin/store-gateway -> $PROD_VENV/bin/store-gateway"
}

ensure_user() {
    local group
    for group in bluetooth dialout; do
        if ! getent group "$group" >/dev/null; then
            log "user: creating group $group"
            groupadd --system "$group"
        fi
    done
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        log "user: $SERVICE_USER exists; making sure it is in bluetooth and dialout"
        usermod --append --groups bluetooth,dialout "$SERVICE_USER"
    else
        log "user: creating system user $SERVICE_USER (groups bluetooth, dialout)"
        useradd --system --user-group --groups bluetooth,dialout \
            --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
            --comment "store-gateway daemon" "$SERVICE_USER"
    fi
}

install_config_and_state() {
    install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
    if [[ -e $CONFIG_DIR/gateway.toml ]]; then
        log "config: keeping the existing $CONFIG_DIR/gateway.toml"
    else
        log "config: $CONFIG_DIR/gateway.toml from gateway/gateway.example.toml"
        install -m 0640 -o root -g "$SERVICE_USER" \
            "$SRC_DIR/gateway/gateway.example.toml" "$CONFIG_DIR/gateway.toml"
    fi
    # POS dialects: the shipped ones, without overwriting a store's own edits.
    install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR/pos"
    local dialect
    for dialect in "$SRC_DIR"/firmware_configs/pos/*.toml; do
        [[ -e $dialect ]] || continue
        if [[ -e $CONFIG_DIR/pos/$(basename "$dialect") ]]; then
            log "pos: keeping the existing $CONFIG_DIR/pos/$(basename "$dialect")"
        else
            install -m 0640 -o root -g "$SERVICE_USER" "$dialect" "$CONFIG_DIR/pos/"
            log "pos: dialect $CONFIG_DIR/pos/$(basename "$dialect")"
        fi
    done
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    log "state: $STATE_DIR (0750 $SERVICE_USER)"
    # What ships read-only and world-readable (the demo runs as any user): the default
    # model bundle (models/README.md) and the POS dialects with their sample captures,
    # refreshed on every run so an upgrade brings the new ones.
    install -d -m 0755 "$SHARE_DIR"
    local part target
    for part in models/default firmware_configs/pos; do
        [[ -d $SRC_DIR/$part ]] || continue
        target="$SHARE_DIR/${part#firmware_configs/}"
        install -d -m 0755 "$(dirname "$target")"
        rm -rf "$target.new"
        cp -r "$SRC_DIR/$part" "$target.new"
        chmod -R u=rwX,go=rX "$target.new"
        rm -rf "$target"
        mv "$target.new" "$target"
        log "shipped: $target"
    done
    # Run as the service user: this also proves it can read the file.
    if runuser -u "$SERVICE_USER" -- /usr/local/bin/store-gateway check-config \
        --config "$CONFIG_DIR/gateway.toml"; then
        log "config: check-config ok"
    else
        warn "check-config reports problems in $CONFIG_DIR/gateway.toml (see above); fix them before starting the service"
    fi
}

configure_mosquitto() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<'EOF'
# The store's broker, written by store-gateway's install.sh (rewritten on every
# run: change install.sh, not this file). The gateway, kiosks and screens meet here.
listener 1883 127.0.0.1
# Anonymous for now: the only listener is loopback, so only processes on this
# machine can connect. Per-client users and ACLs come with the first listener
# on the store network (kiosks, screens, ESP32 satellites).
allow_anonymous true
# Keep retained messages (gateway status, screen content) across broker restarts.
persistence true
EOF
    install -d -m 0755 /etc/mosquitto/conf.d
    local changed=0
    if ! cmp -s "$tmp" "$MOSQUITTO_CONF"; then
        install -m 0644 "$tmp" "$MOSQUITTO_CONF"
        changed=1
        log "mosquitto: wrote $MOSQUITTO_CONF"
    else
        log "mosquitto: $MOSQUITTO_CONF already up to date"
    fi
    rm -f -- "$tmp"
    if systemd_running; then
        systemctl enable --quiet mosquitto.service
        if ((changed)); then
            log "mosquitto: restarting to load the new configuration"
            systemctl restart mosquitto.service
        else
            systemctl start mosquitto.service
        fi
    else
        # What the mosquitto unit's ExecStartPre does, so that a foreground
        # `mosquitto -c /etc/mosquitto/mosquitto.conf` can write its pid file.
        if id mosquitto >/dev/null 2>&1; then
            install -d -m 0740 -o mosquitto /run/mosquitto
        fi
    fi
}

# The unit allows serial ttys by driver name (DeviceAllow=char-ttyUSB ...),
# resolved when the service starts; a driver that loads later (the first
# USB-serial adapter plugged in after boot) would stay locked out until a
# restart. Loading the drivers at boot avoids that.
configure_serial_modules() {
    local module modules=()
    for module in usbserial cdc_acm; do
        if modinfo "$module" >/dev/null 2>&1; then
            modules+=("$module")
        fi
    done
    if ((${#modules[@]} == 0)); then
        log "modules: usbserial/cdc_acm unknown to this kernel (a container?); skipped"
        return 0
    fi
    {
        echo "# Written by store-gateway's install.sh: serial drivers registered before"
        echo "# store-gateway.service starts, so its DeviceAllow=char-ttyUSB/char-ttyACM resolve."
        printf '%s\n' "${modules[@]}"
    } >/etc/modules-load.d/store-gateway.conf
    log "modules: ${modules[*]} loaded at boot (/etc/modules-load.d/store-gateway.conf)"
    if systemd_running; then
        modprobe -a "${modules[@]}" || warn "could not load ${modules[*]} now; they load at next boot"
    fi
}

install_units() {
    local unit units=()
    for unit in "$SRC_DIR"/systemd/*.service "$SRC_DIR"/systemd/*.timer; do
        [[ -e $unit ]] || continue
        install -m 0644 "$unit" "$UNIT_DIR/$(basename "$unit")"
        units+=("$(basename "$unit")")
    done
    log "systemd: installed ${units[*]} into $UNIT_DIR"
    if command -v systemd-analyze >/dev/null 2>&1; then
        local report
        report=$(systemd-analyze verify "$UNIT_DIR/store-gateway.service" 2>&1) || true
        [[ -z $report ]] || warn "systemd-analyze verify: $report"
    fi
    if systemd_running; then
        systemctl daemon-reload
        systemctl enable --quiet store-gateway.service
        log "systemd: (re)starting store-gateway.service"
        if ! systemctl restart store-gateway.service; then
            systemctl --no-pager status store-gateway.service >&2 || true
            die "store-gateway.service did not start; see: journalctl -u store-gateway -o cat"
        fi
        log "done: running. Status: systemctl status store-gateway"
        log "      Logs:   journalctl -u store-gateway -o cat | jq"
    else
        log "systemd is not running as PID 1 here (a container?): nothing was enabled or started."
        log "To run the store broker and the gateway in the foreground:"
        log "    mosquitto -c /etc/mosquitto/mosquitto.conf -d"
        if command -v sudo >/dev/null 2>&1; then
            log "    sudo -u $SERVICE_USER store-gateway run --config $CONFIG_DIR/gateway.toml"
        else
            log "    runuser -u $SERVICE_USER -- store-gateway run --config $CONFIG_DIR/gateway.toml"
        fi
        log "Or try the self-contained demo:  store-gateway demo"
    fi
}

log "mode: $MODE, checkout: $SRC_DIR"
install_apt_packages
if [[ $MODE == dev ]]; then
    install_dev
    exit 0
fi
ensure_user
install_prod_venv
install_config_and_state
configure_mosquitto
configure_serial_modules
install_units
