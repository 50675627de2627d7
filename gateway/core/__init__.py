"""The ground floor: what every part of a request shares.

The HTTP-side error tree (``errors``), the request context and the interceptor seam
(``context``), the runtime snapshot a handler works from (``runtime``), background-task helpers,
percentiles and validation helpers. Imports ``providers`` and ``cache`` public types and, for type
annotations only, the layers above; nothing above at run time.
"""
