"""A real SMTP client for the SMTP listener's tests: Python's smtplib, as a sending server or
a script would use it. argv[1] is the request as JSON (host, port, from, to, and optionally
helo, starttls with cafile, mail_options); the mail is read from stdin. Prints what the server
answered as JSON: the EHLO keywords (before and after STARTTLS), the refused recipients, and
the code of the answer to the mail."""

import json
import smtplib
import ssl
import sys

request = json.loads(sys.argv[1])
mail = sys.stdin.buffer.read()
answer = {}


def text(message):
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


try:
    client = smtplib.SMTP(request["host"], request["port"], timeout=60)
    client.ehlo(request.get("helo", "client.example.org"))
    answer["ehlo"] = sorted(client.esmtp_features)
    if request.get("starttls"):
        context = ssl.create_default_context(cafile=request["cafile"])
        code, _ = client.starttls(context=context)
        answer["starttls"] = code
        answer["tls_version"] = client.sock.version()
        client.ehlo(request.get("helo", "client.example.org"))
        answer["ehlo_tls"] = sorted(client.esmtp_features)
    try:
        refused = client.sendmail(
            request["from"], request["to"], mail, mail_options=request.get("mail_options", [])
        )
        answer["refused"] = {k: [v[0], text(v[1])] for k, v in refused.items()}
        answer["data"] = 250
    except smtplib.SMTPRecipientsRefused as e:
        answer["refused"] = {k: [v[0], text(v[1])] for k, v in e.recipients.items()}
    except smtplib.SMTPSenderRefused as e:
        answer["mail"] = [e.smtp_code, text(e.smtp_error)]
    except smtplib.SMTPDataError as e:
        answer["data"] = e.smtp_code
        answer["data_text"] = text(e.smtp_error)
    try:
        client.quit()
    except smtplib.SMTPServerDisconnected:
        pass
except Exception as e:  # the test shows it
    answer["error"] = repr(e)
print(json.dumps(answer))
