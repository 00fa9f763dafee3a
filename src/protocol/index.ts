export * from './messages.js';
export * from './commands.js';
export * from './backend.js';
export * from './frontend.js';
export * from './repl-grammar.js';
