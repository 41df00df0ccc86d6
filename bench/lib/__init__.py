"""What the benchmarks share. Each script in bench/ imports from here, never from another script; nothing here
imports a script. Run a script from the repository root as `python -m bench.NAME`.

    models          random-weight models of real sizes (the tiny test builders at real shapes), the Qwen3 model
                    card's scoring, exporting a served model by name or a precision variant
    text            queries, documents and request bodies of given lengths
    servers         `rerankrt serve` in a subprocess on a free port, waiting until it is ready, stopping it
    infinity        Infinity, the peer server, in its own pinned environment (bench/.venv-infinity)
    clients         load generators against a running server (closed loop, bursts)
    timing          a call timed once, or repeated after a warm-up
    results         log lines, bench/results/<name>.json with the machine, markdown tables
    plotting        the figures in bench/results/
    trained_minilm  trained all-MiniLM-L6-v2 as a cross-encoder, and natural text, for fidelity on real weights
"""
