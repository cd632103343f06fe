// Small inline icons (stroke-based, currentColor).

import type { ReactElement } from "react";

const paths: Record<string, ReactElement> = {
  play: <path d="M7 4.5v15l12-7.5z" fill="currentColor" stroke="none" />,
  pause: (
    <>
      <rect x="6" y="4.5" width="4" height="15" rx="1" fill="currentColor" stroke="none" />
      <rect x="14" y="4.5" width="4" height="15" rx="1" fill="currentColor" stroke="none" />
    </>
  ),
  start: (
    <>
      <path d="M6 5v14" />
      <path d="M18 5.5v13L9 12z" fill="currentColor" stroke="none" />
    </>
  ),
  plus: <path d="M12 5v14M5 12h14" />,
  lock: (
    <>
      <rect x="5" y="11" width="14" height="9" rx="2" fill="currentColor" stroke="none" />
      <path d="M8 11V8a4 4 0 018 0v3" />
    </>
  ),
  undo: <path d="M9 7L4.5 11.5 9 16M5 11.5h9.5a5 5 0 010 10H12" />,
  redo: <path d="M15 7l4.5 4.5L15 16M19 11.5H9.5a5 5 0 000 10H12" />,
  trash: (
    <>
      <path d="M4.5 7h15M9.5 7V4.8h5V7M6.5 7l.9 12.2h9.2L17.5 7" />
      <path d="M10.2 10.5v5.5M13.8 10.5v5.5" />
    </>
  ),
  marker: <path d="M6 21V4h11l-2.5 4 2.5 4H6" />,
  zoomIn: (
    <>
      <circle cx="10.5" cy="10.5" r="6" />
      <path d="M15 15l5 5M8 10.5h5M10.5 8v5" />
    </>
  ),
  zoomOut: (
    <>
      <circle cx="10.5" cy="10.5" r="6" />
      <path d="M15 15l5 5M8 10.5h5" />
    </>
  ),
  eye: (
    <>
      <path d="M2.5 12s3.5-6.5 9.5-6.5 9.5 6.5 9.5 6.5-3.5 6.5-9.5 6.5S2.5 12 2.5 12z" />
      <circle cx="12" cy="12" r="2.8" />
    </>
  ),
  close: <path d="M6.5 6.5l11 11M17.5 6.5l-11 11" />,
  logo: <path d="M6 16V8M10 19V5M14 15V9M18 17V7" />,
};

export function Icon({ name, size = 16 }: { name: keyof typeof paths; size?: number }): ReactElement {
  return (
    <svg
      className="icon"
      width={size}
      height={size}
      viewBox="0 0 24 24"
      fill="none"
      stroke="currentColor"
      strokeWidth="2"
      strokeLinecap="round"
      strokeLinejoin="round"
      aria-hidden="true"
    >
      {paths[name]}
    </svg>
  );
}
