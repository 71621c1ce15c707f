"""Outbound server-server transport: server discovery (``resolver``), X-Matrix request
signing (``x_matrix``) and the HTTPS client that sends signed requests (``client``)."""
