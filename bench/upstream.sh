# shellcheck shell=bash
# The loopback upstream that the benchmark (bench/run) and the profile-guided release build
# (deploy/build-release) drive traffic at: a throw-away PKI made with openssl, and nginx from its
# own temp config (worker_processes 1; TLS 1.2/1.3 with HTTP/1.1 and HTTP/2 by ALPN; fixed 1 KiB
# and 1 MiB bodies). Source this file, then:
#
#   upstream_pki DIR             CA and server certificate in DIR (ca.pem, server.pem, ...)
#   upstream_nginx_start DIR PKI NOFILE
#                                nginx under DIR/nginx, trusting nothing, serving /1k and /1m;
#                                sets HTTP_PORT, HTTPS_PORT, IDLE_PORT and NGINX_PID
#   upstream_nginx_stop          stops it (safe to call when it never started)
#   free_ports N                 prints N free TCP ports on 127.0.0.1
#
# Everything listens on 127.0.0.1.

NGINX_PID=""

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
}

upstream_pki() {
    local pki="$1"
    mkdir -p "$pki"
    (
        cd "$pki"
        openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem 2>/dev/null
        openssl req -x509 -new -key ca-key.pem -sha256 -days 2 -subj "/CN=flowtap bench upstream CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out ca.pem 2>/dev/null
        openssl ecparam -name prime256v1 -genkey -noout -out server-key.pem 2>/dev/null
        openssl req -new -key server-key.pem -subj "/CN=localhost" -out server.csr 2>/dev/null
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -sha256 \
            -extfile server.ext -out server.pem 2>/dev/null
    )
}

upstream_nginx_start() {
    local work="$1" pki="$2" nofile="$3"
    read -r HTTP_PORT HTTPS_PORT IDLE_PORT < <(free_ports 3)
    local ng="$work/nginx"
    mkdir -p "$ng/www" "$ng/tmp"
    head -c 1024 /dev/urandom > "$ng/www/1k"
    head -c 1048576 /dev/urandom > "$ng/www/1m"
    local worker_connections=$(( nofile > 65536 ? 65536 : nofile - 64 ))
    local user=""
    [ "$(id -u)" -ne 0 ] || user="user root;"
    cat > "$ng/nginx.conf" <<EOF
$user
worker_processes 1;
worker_rlimit_nofile $nofile;
pid $ng/nginx.pid;
error_log $ng/error.log warn;
daemon off;
events { worker_connections $worker_connections; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path $ng/tmp/body;
    proxy_temp_path $ng/tmp/proxy;
    fastcgi_temp_path $ng/tmp/fastcgi;
    uwsgi_temp_path $ng/tmp/uwsgi;
    scgi_temp_path $ng/tmp/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $ng/www;
    server { listen 127.0.0.1:$HTTP_PORT; }
    server {
        listen 127.0.0.1:$HTTPS_PORT ssl http2;
        ssl_certificate $pki/server.pem;
        ssl_certificate_key $pki/server-key.pem;
    }
    # For (f) when the fd limit cannot hold 2 x 10,000 sockets in the proxy: upstream
    # connections are closed by nginx 1 s after their response, client ones stay open.
    server { listen 127.0.0.1:$IDLE_PORT; keepalive_timeout 1s; }
}
EOF
    nginx -t -q -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log"
    nginx -p "$ng" -c "$ng/nginx.conf" -e "$ng/error.log" &
    NGINX_PID=$!
    local _
    for _ in $(seq 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1',$HTTPS_PORT),0.2).close()" 2>/dev/null; then
            return 0
        fi
        kill -0 "$NGINX_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "nginx did not start: $(tail -5 "$ng/error.log" 2>/dev/null)" >&2
    return 1
}

upstream_nginx_stop() {
    if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill "$NGINX_PID" 2>/dev/null || true
        local _
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$NGINX_PID" 2>/dev/null || true
    fi
    NGINX_PID=""
}
