"""The MTQP face of mtqpd (RFC 3887): protocol core, network shell, RFC 3886
rendering, authorisation, client, and the ``mtqpd`` command line.
"""
