"""Email: a ``multipart/alternative`` message (plain text first, HTML preferred) sent over SMTP.

STARTTLS verifies the server's certificate against the system's trust store (``SSL_CERT_FILE``
points elsewhere for a private CA). The password comes from the environment variable that
``smtp.password_env`` names; it is never stored, and no message here can contain it.
"""

from __future__ import annotations

import email.utils
import logging
import os
import smtplib
import socket
import ssl
from email.message import EmailMessage
from typing import Sequence

from ..config import Config, Smtp
from .render import Rendered

log = logging.getLogger(__name__)


def sender(config: Config) -> str:
    """The From address: report.sender, else the SMTP user, else one naming this host."""
    return config.report.sender or config.smtp.username or f"hotfolder-pipeline@{socket.getfqdn()}"


class MailError(Exception):
    """The message could not be handed to the SMTP server; the text says why in one line."""


def configured(smtp: Smtp, recipients: Sequence[str], recipients_key: str) -> str | None:
    """None when mail can be sent to ``recipients``; else what is missing, naming the key."""
    if not smtp.host:
        return "[smtp] host is empty"
    if not recipients:
        return f"{recipients_key} is empty"
    return None


def build(rendered: Rendered, sender: str, recipients: Sequence[str], now: float) -> EmailMessage:
    """The message: text/plain and text/html alternatives of the same content."""
    msg = EmailMessage()
    msg["Subject"] = rendered.subject
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = email.utils.formatdate(now, localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


def send(smtp: Smtp, msg: EmailMessage) -> None:
    """Hand ``msg`` to the server: STARTTLS when configured, login when a username is set."""
    where = f"{smtp.host}:{smtp.port}"
    password = None
    if smtp.username:
        password = os.environ.get(smtp.password_env)
        if password is None:
            raise MailError(f"environment variable {smtp.password_env} ([smtp] password_env) is not set")
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as server:
            server.ehlo()
            if smtp.starttls:
                server.starttls(context=ssl.create_default_context())
                server.ehlo()
            if smtp.username:
                server.login(smtp.username, password)
            refused = server.send_message(msg)
    except smtplib.SMTPAuthenticationError as e:
        raise MailError(f"SMTP server {where} refused the login of {smtp.username!r}: {_reply(e)}") from None
    except smtplib.SMTPNotSupportedError as e:
        # smtplib's text names what is missing: "STARTTLS extension not supported by server."
        raise MailError(f"SMTP server {where}: {str(e).rstrip('.')}; nothing was sent") from None
    except smtplib.SMTPRecipientsRefused as e:
        raise MailError(f"SMTP server {where} refused every recipient: {', '.join(e.recipients)}") from None
    except smtplib.SMTPResponseException as e:
        raise MailError(f"SMTP server {where} answered {_reply(e)}") from None
    except smtplib.SMTPException as e:
        raise MailError(f"SMTP server {where}: {e}") from None
    except ssl.SSLError as e:
        raise MailError(f"SMTP server {where}: TLS failed: {e.reason or e}") from None
    except OSError as e:
        raise MailError(f"SMTP server {where} unreachable: {e.strerror or e}") from None
    if refused:
        log.warning("SMTP server %s refused some recipients: %s", where, ", ".join(refused))


def _reply(e: smtplib.SMTPResponseException) -> str:
    text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
    return f"{e.smtp_code} {' '.join(text.split())}"
