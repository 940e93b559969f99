"""The door as a camera for NVRs: RTSP, ONVIF, snapshots and two-way talk.

Frigate, go2rtc, Home Assistant and Blue Iris record the door with their other cameras and
talk to the visitor from a dashboard. Everything here is fed by the camera's own H.264 (never
encoded again) and sits beside calls, not in their way:

- `settings`: the `rtsp:` section of the door's YAML and its accounts file.
- `rtsp`: GStreamer's RTSP server (the only module that imports GStreamer), on a thread of
  its own at the edge, as the camera and the sound card are.
- `talk`: the door's rule for who may talk back through the ONVIF backchannel, and when.
- `soap`, `onvif`: the ONVIF Profile S calls NVRs make to find the stream (sans-I/O).
- `httpauth`: HTTP Digest and Basic checks for the snapshot (sans-I/O).
- `http`: the door's small HTTP server for ONVIF and `/snapshot.jpg`.
"""
