"""The upstreams every target is measured against, started once per run.

nginx (Debian package, one worker, TLS, keep-alive) serves the small fixed
body; it answers 403 unless `x-api-key` carries the real value, so a proxy
that fails to substitute shows up as errors rather than fast numbers. The
Go loadgen binary's `sse-server` serves the timed event stream, with the
same 403 rule. Both listen on loopback only.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .certs import Pki

BODY = '{"id":"bench","object":"message","content":"ok"}'

NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            default_type application/json;
            if ($http_x_api_key != "{secret}") {{
                return 403 '{{"error":"wrong or missing x-api-key"}}\\n';
            }}
            return 200 '{body}\\n';
        }}
    }}
}}
"""


@dataclass
class Upstreams:
    name: str  # the host name clients ask for; resolved to 127.0.0.1 by each target
    http_port: int
    sse_port: int
    nginx: subprocess.Popen
    sse: subprocess.Popen
    logs: list[Path] = field(default_factory=list)

    @property
    def http_target(self) -> str:
        return f"{self.name}:{self.http_port}"

    @property
    def sse_target(self) -> str:
        return f"{self.name}:{self.sse_port}"

    def stop(self) -> None:
        procs.stop(self.nginx)
        procs.stop(self.sse)


def start(workdir: Path, pki: Pki, name: str, secret: str, nginx_bin: str, loadgen: Path) -> Upstreams:
    ngx_dir = workdir / "nginx"
    (ngx_dir / "tmp").mkdir(parents=True)
    http_port, sse_port = procs.free_port(), procs.free_port()
    conf = ngx_dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=ngx_dir,
            port=http_port,
            name=name,
            cert=pki.server_cert,
            key=pki.server_key,
            secret=secret,
            body=BODY,
        )
    )
    nginx_log = workdir / "nginx.out"
    nginx = procs.spawn(
        [nginx_bin, "-e", str(ngx_dir / "nginx-error.log"), "-p", str(ngx_dir), "-c", str(conf)], nginx_log
    )
    sse_log = workdir / "sse-server.out"
    sse = procs.spawn(
        [
            str(loadgen),
            "sse-server",
            "-listen",
            f"127.0.0.1:{sse_port}",
            "-cert",
            str(pki.server_cert),
            "-key",
            str(pki.server_key),
            "-api-key",
            secret,
        ],
        sse_log,
    )
    up = Upstreams(name, http_port, sse_port, nginx, sse, [nginx_log, sse_log])
    try:
        procs.wait_port(http_port, nginx)
        procs.wait_port(sse_port, sse)
    except Exception as e:
        up.stop()
        raise RuntimeError(
            "upstream failed to start:\n"
            + procs.log_tail(nginx_log)
            + procs.log_tail(sse_log)
            + procs.log_tail(ngx_dir / "nginx-error.log")
        ) from e
    return up
