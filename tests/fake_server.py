"""`python -m tests.fake_server [--multimodal | --tokenizer DIR]`: rerankrt's HTTP server, configured by RERANKRT_*
variables as `rerankrt serve` is, over the in-memory model of tests/fakes.py (or a real tokenizer folder's
encoder with a backend that scores zeros): what the fault tests and the fuzzer run as a process, without
exporting or loading a model."""

from __future__ import annotations

import argparse

from rerankrt.logs import configure_logging
from rerankrt.server import create_app
from rerankrt.server.settings import ServeSettings
from tests.fakes import ZeroBackend, make_model


def tokenizer_model(folder: str):
    """The tiny cross-encoder's real tokenizer and truncation, scoring zeros."""
    from rerankrt.families import get_family
    from rerankrt.precision import Precision
    from rerankrt.runtime.loader import LoadedModel
    from rerankrt.runtime.plan import ServingPlan

    family = get_family("cross-encoder")
    plan = ServingPlan(backend="zeros", device="cpu", precision=Precision.FP32)
    return LoadedModel(family, family.load_encoder(folder), ZeroBackend(), plan, name="tokenizer-only")


def offline() -> None:
    """No packet leaves this machine: host names other than localhost do not resolve, and connections go to
    loopback addresses only (the fuzzer sends whatever URLs it makes up)."""
    import ipaddress
    import socket

    import httpcore

    resolve, connect = socket.getaddrinfo, httpcore.AnyIOBackend.connect_tcp

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name.split("%")[0])
        except ValueError:
            if name != "localhost":
                raise socket.gaierror(socket.EAI_NONAME, "offline: no name resolution") from None
        return resolve(host, *args, **kwargs)

    async def connect_tcp(self, host, port, *args, **kwargs):
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise httpcore.ConnectError(f"offline: no connection to {host}")
        return await connect(self, host, port, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    httpcore.AnyIOBackend.connect_tcp = connect_tcp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--multimodal", action="store_true")
    parser.add_argument("--tokenizer", help="a tokenizer folder (cross-encoder) to encode with")
    parser.add_argument("--offline", action="store_true", help="resolve no names, connect to loopback only")
    args = parser.parse_args()
    if args.offline:
        offline()
    settings = ServeSettings(model_path="-")  # everything else from RERANKRT_* variables
    configure_logging(settings.log_level, settings.log_format)
    model = tokenizer_model(args.tokenizer) if args.tokenizer else make_model(multimodal=args.multimodal)
    app = create_app(settings, model)
    try:
        from rerankrt.server.http import serve
    except ImportError:  # a build from before the server had its connection limits (to show what they fix)
        import uvicorn

        def serve(app, settings):
            uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)

    serve(app, settings)


if __name__ == "__main__":
    main()
