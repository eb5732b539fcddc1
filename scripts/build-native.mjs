// Placeholder until the native addon lands.
console.log('clipcap: native addon not part of this build yet');
