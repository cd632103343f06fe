// The studio page's entry: reads `room` and `token` from the address (`/?room=R&token=T`), the
// host from `location.host` (the sequencer serves this page and the socket from one origin),
// and mounts the studio, or explains how to get a token.

import { StrictMode, type ReactElement } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App.js";
import { tokenClaims } from "./model.js";

function NoToken({ room, reason }: { room: string; reason?: string }): ReactElement {
  const origin = `${location.protocol}//${location.host}`;
  return (
    <div className="landing" data-testid="no-token">
      <div className="landing-card">
        <div className="landing-logo">◆ Studio</div>
        <h1>{reason ?? "This page needs a room token"}</h1>
        <p>
          Open the studio as <code>{origin}/?room=ROOM&amp;token=TOKEN</code>, with a room token signed by the server's secret for that room
          (PROTOCOL §2).
        </p>
        <h2>Quickest: a demo token</h2>
        <p>
          Start the server <b>without</b> <code>--secret</code> (and without <code>SEQUENCER_SECRET</code>). It makes a secret and prints a ready
          link to this page with a demo token:
        </p>
        <pre>sequencer --memory{"\n"}…{"\n"}studio page (open it in two windows to edit together): http://127.0.0.1:1999/?room=demo&amp;token=…</pre>
        <h2>A token for your own room</h2>
        <pre>
          sequencer token --secret "$SEQUENCER_SECRET" --room {room || "my-song"} --sub alice --name Alice{"\n"}
          {"  "}[--role viewer] [--ttl 3600]
        </pre>
        <p>then open {origin}/?room={room || "my-song"}&amp;token=&lt;the printed token&gt;. Two windows (or two people) with tokens for the same room edit together.</p>
      </div>
    </div>
  );
}

const params = new URLSearchParams(location.search);
const room = params.get("room") ?? "";
const token = params.get("token") ?? "";
const claims = tokenClaims(token);
const root = createRoot(document.getElementById("root")!);

if (!token) {
  root.render(<NoToken room={room} />);
} else if (!/^[A-Za-z0-9_-]{1,128}$/.test(room)) {
  root.render(<NoToken room="" reason={room ? `"${room}" is not a valid room id` : "The address names no room"} />);
} else {
  if (typeof claims.room === "string" && claims.room !== room) console.warn(`studio: the token is for room "${claims.room}", not "${room}"`);
  root.render(
    <StrictMode>
      <App host={location.host} room={room} token={token} viewer={claims.role === "viewer"} userName={typeof claims.name === "string" ? claims.name : "You"} />
    </StrictMode>,
  );
}
