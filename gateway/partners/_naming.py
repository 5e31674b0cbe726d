"""How a certificate names an institution: the one rule the outbound side (the SMART
client assertion's ``x5c``, the mTLS client certificate) and the inbound token
endpoint agree on (docs/partners.md, "Who the certificate names")."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..network import Institution

__all__ = ["names_institution"]


def names_institution(cert: x509.Certificate, institution: Institution) -> bool:
    """Whether ``cert`` is an institution certificate of ``institution`` as
    ``gateway keys init`` issues them (gateway/signing/_pki.py): no subject
    ``serialNumber`` (that marks a practitioner's certificate), and the subject's
    ``organizationIdentifier`` ``OID:<oid>``, or a subjectAltName URI
    ``urn:oid:<oid>``, or a subjectAltName URI equal to the institution's ``base``."""
    subject = cert.subject
    if subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        return False
    ids = {str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = set(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = set()
    if institution.oid and (
        f"OID:{institution.oid}" in ids or f"urn:oid:{institution.oid}" in uris
    ):
        return True
    return institution.base in uris
