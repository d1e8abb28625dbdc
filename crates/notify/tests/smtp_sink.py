"""A local SMTP sink for the notification tests (aiosmtpd).

Usage: smtp_sink.py CERT KEY OUT_DIR. Listens on two loopback ports: one plain that requires
STARTTLS and accepts AUTH as backup/secret, one with TLS from the first byte. Prints
{"starttls": PORT, "tls": PORT} on one line once both listen. Each message received is
written to OUT_DIR/N.json as a mail client would read it: envelope, subject, content type,
the decoded text and HTML parts, whether TLS was on and who logged in.
"""

import asyncio
import email
import email.policy
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = {}
        for part in message.walk():
            if not part.is_multipart():
                parts[part.get_content_type()] = part.get_content()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": message["subject"],
            "content_type": message.get_content_type(),
            "text": parts.get("text/plain"),
            "html": parts.get("text/html"),
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": bool(session.authenticated),
        }
        self.count += 1
        path = os.path.join(self.out_dir, f"{self.count}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"backup" and auth_data.password == b"secret"
    return AuthResult(success=ok)


async def main():
    cert, key, out_dir = sys.argv[1:4]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = Sink(out_dir)
    loop = asyncio.get_running_loop()
    starttls = await loop.create_server(
        lambda: SMTP(sink, hostname="localhost", tls_context=context, require_starttls=True, authenticator=authenticate),
        "127.0.0.1",
        0,
    )
    implicit_tls = await loop.create_server(lambda: SMTP(sink, hostname="localhost"), "127.0.0.1", 0, ssl=context)
    ports = {"starttls": starttls.sockets[0].getsockname()[1], "tls": implicit_tls.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
