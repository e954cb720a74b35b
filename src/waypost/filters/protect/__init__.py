"""Body checks in the decision service: request validation and body screening per Route.

Reached through the ``waypost.body_checks`` ext_authz filter (see
:mod:`waypost.xds.compiler.body_checks`) on the decision service's gRPC port.
"""
