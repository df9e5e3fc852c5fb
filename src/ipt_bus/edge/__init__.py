"""The HTTP and WebSocket edge: the one publish ingress, REST, WebSocket admission, transport."""
