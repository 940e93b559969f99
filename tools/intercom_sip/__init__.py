"""The SIP gateway (`intercom-sip`): the phones a house already has, as devices of the server."""
