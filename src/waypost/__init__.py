"""waypost: an Envoy control plane. Policy files in git -> typed model -> Envoy resources -> xDS."""

__version__ = "0.1.0"
