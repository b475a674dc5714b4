"""Local fakes of the HTTP mail APIs (SendGrid v3, Mailgun, Mailjet v3.1): small real HTTP
servers on 127.0.0.1 implementing each documented endpoint, with scripted faults."""
