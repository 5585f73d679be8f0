"""The LoadTest contract, shared by the load generator, the operator and analysis.

``schema``  the one declaration of ``spec`` (OpenAPI v3, as the CRD has it) and
            a validator whose errors name the field path
``spec``    the validated ``spec`` as frozen dataclasses; a whole manifest or
            the ``spec`` of a LoadTest object in, a :class:`~.spec.LoadTest` out
``slo``     ``spec.slo``: thresholds, the verdict on a stage that ran, the
            command-line form (``p99<=50ms,delivery>=99.9%``)

No I/O here: reading a manifest file is the load generator's
(:mod:`scalechat.loadgen.config`), reading a LoadTest object the operator's.
"""
