export * from './lsn.js';
export * from './segment.js';
export * from './timeline.js';
export * from './time.js';
export * from './page.js';
