# Sourced by the bench scripts: the one client they all authenticate as, written into $work
# (clients.toml, and wrk scripts basic.lua and post.lua for its two ways of authenticating),
# daemon_config and wait_up. Expects $work to be set.

secret=bench-secret-0123456789abcdef0123456789abcdef
hash=$(printf %s "$secret" | sha256sum | cut -d' ' -f1)
cat > "$work/clients.toml" <<TOML
[clients.bench]
secret_hashes = ["sha256:$hash"]
audiences     = ["https://api.bench.example"]
scopes        = ["read", "write"]
token_ttl     = "1h"
TOML
chmod 600 "$work/clients.toml"
basic=$(printf %s "bench:$secret" | base64 -w0)
cat > "$work/basic.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
LUA
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&client_id=bench&client_secret=$secret"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA

wait_up() { # url [tries, 0.1 s apart]
    for _ in $(seq "${2:-100}"); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "server at $1 did not come up" >&2; exit 1
}

daemon_config() { # alg port → $work/ALG/config.toml, a daemon signing with ALG on the port
    mkdir -p "$work/$1"
    cat > "$work/$1/config.toml" <<TOML
listen       = "127.0.0.1:$2"
admin_socket = "$work/$1/admin.sock"
clients_file = "$work/clients.toml"
key_dir      = "$work/$1/keys"
algorithm    = "$1"
TOML
}
