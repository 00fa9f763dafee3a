export * from './messages.js';
export * from './commands.js';
